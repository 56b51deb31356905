//! Length-prefixed frames on QUIC streams ([`crate::codec`] framing): what the node's
//! request/response streams carry, e.g. `sync` messages and the join exchange.

use quinn::{ReadExactError, RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};

use crate::codec::{self, CodecError, PREFIX_LEN};

/// Errors reading or writing frames. The stream is unusable after any of them; the
/// connection and every other state are unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The frame is over the size limit, or not a valid message.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Reading failed (reset, connection lost).
    #[error("cannot read stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed (stopped, connection lost).
    #[error("cannot write stream: {0}")]
    Write(#[from] quinn::WriteError),
}

fn exact(e: ReadExactError) -> StreamError {
    match e {
        ReadExactError::FinishedEarly(_) => StreamError::Truncated,
        ReadExactError::ReadError(e) => StreamError::Read(e),
    }
}

/// Writes one frame carrying `payload`, which must be at most `max` bytes.
pub async fn write_frame(send: &mut SendStream, payload: &[u8], max: usize) -> Result<(), StreamError> {
    let frame = codec::frame(payload, max)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes; `Ok(None)` when the stream ended cleanly between
/// frames. The prefix is checked before the payload is buffered.
pub async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Option<Vec<u8>>, StreamError> {
    let mut prefix = [0u8; PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(exact(e)),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    let max = max.min(codec::MAX_MESSAGE);
    if len > max {
        return Err(CodecError::FrameTooLarge { len, max }.into());
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(exact)?;
    Ok(Some(payload))
}

/// Encodes `value` with [`codec`] and writes it as one frame.
pub async fn write_message<T: Serialize>(send: &mut SendStream, value: &T) -> Result<(), StreamError> {
    let bytes = codec::encode(value)?;
    write_frame(send, &bytes, codec::MAX_MESSAGE).await
}

/// Reads one frame of at most `max` bytes and decodes it; `Ok(None)` at a clean end.
pub async fn read_message<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, StreamError> {
    match read_frame(recv, max).await? {
        Some(bytes) => Ok(Some(codec::decode(&bytes, max)?)),
        None => Ok(None),
    }
}
