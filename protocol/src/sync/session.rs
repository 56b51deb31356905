//! One anti-entropy round with one peer, as a sans-I/O state machine.

use std::collections::VecDeque;

use super::{
    diff, entries_messages, merge_entries, summary_messages, MergeStats, Summary, SyncMessage,
    MAX_SUMMARY_KEYS,
};
use crate::codec::CodecError;
use crate::desired::DesiredState;

/// Errors of a sync round. After any of them the round is over and the stream should be
/// closed; entries merged before the error stay merged (each is a valid CRDT merge).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The peer sent a message that does not fit the round's progress; the message was
    /// ignored and the state is unchanged by it.
    #[error("unexpected {got} message from peer while {expected}")]
    Unexpected { got: &'static str, expected: &'static str },
    /// The peer's summary lists more keys than allowed; the state is unchanged by it.
    #[error("peer summary exceeds {max} keys")]
    SummaryTooLarge { max: usize },
    /// An outgoing message could not be encoded; the state is unchanged.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Our digest is queued; waiting for the peer's.
    AwaitDigest,
    /// Our summary is queued; collecting the peer's summary chunks.
    AwaitSummary,
    /// Our entries are queued; waiting for the peer's last entries chunk.
    AwaitEntries,
    Done,
}

/// One anti-entropy round over one ordered, bidirectional stream. Both sides run the same
/// machine.
///
/// Call order: [`SyncSession::start`]; then repeatedly send everything
/// [`SyncSession::poll_transmit`] yields and feed each received message to
/// [`SyncSession::handle_message`], until [`SyncSession::is_done`]. `Push` messages are not
/// part of a round: merge them with [`super::merge_entries`].
#[derive(Debug)]
pub struct SyncSession {
    phase: Phase,
    outbox: VecDeque<SyncMessage>,
    peer: Summary,
    stats: MergeStats,
}

impl SyncSession {
    /// Starts a round and queues our digest.
    pub fn start(state: &DesiredState) -> Self {
        let digest = SyncMessage::Digest {
            digest: state.digest(),
            entries: u32::try_from(state.len()).unwrap_or(u32::MAX),
            gc_floor: state.gc_floor().cloned(),
        };
        Self {
            phase: Phase::AwaitDigest,
            outbox: VecDeque::from([digest]),
            peer: Summary::default(),
            stats: MergeStats::default(),
        }
    }

    /// Handles one message from the peer, merging into `state` where the round says so.
    pub fn handle_message(&mut self, state: &mut DesiredState, msg: SyncMessage) -> Result<(), SyncError> {
        match (self.phase, msg) {
            (Phase::AwaitDigest, SyncMessage::Digest { digest, .. }) => {
                if digest == state.digest() {
                    self.phase = Phase::Done;
                } else {
                    self.outbox.extend(summary_messages(state)?);
                    self.phase = Phase::AwaitSummary;
                }
                Ok(())
            }
            (Phase::AwaitSummary, SyncMessage::Summary { gc_floor, items, last }) => {
                if self.peer.items.len() + items.len() > MAX_SUMMARY_KEYS {
                    self.phase = Phase::Done;
                    return Err(SyncError::SummaryTooLarge { max: MAX_SUMMARY_KEYS });
                }
                self.peer.gc_floor = gc_floor;
                self.peer.items.extend(items);
                if last {
                    let peer = &self.peer;
                    let pruned = state.prune_to_floor(peer.gc_floor.as_ref(), |k| peer.items.contains_key(k));
                    self.stats.pruned += pruned.len();
                    let d = diff(state, peer);
                    self.outbox.extend(entries_messages(state, &d.to_send)?);
                    self.phase = Phase::AwaitEntries;
                }
                Ok(())
            }
            (Phase::AwaitEntries, SyncMessage::Entries { gc_floor, entries, last }) => {
                merge_entries(state, entries, gc_floor.as_ref(), &mut self.stats);
                if last {
                    state.raise_floor(self.peer.gc_floor.as_ref());
                    self.phase = Phase::Done;
                }
                Ok(())
            }
            (phase, msg) => {
                self.phase = Phase::Done;
                Err(SyncError::Unexpected { got: msg_name(&msg), expected: phase_name(phase) })
            }
        }
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<SyncMessage> {
        self.outbox.pop_front()
    }

    /// True when the round is over (and nothing is left to send once the outbox is drained).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// What merging the peer's entries did so far.
    pub fn stats(&self) -> MergeStats {
        self.stats
    }
}

fn msg_name(msg: &SyncMessage) -> &'static str {
    match msg {
        SyncMessage::Digest { .. } => "digest",
        SyncMessage::Summary { .. } => "summary",
        SyncMessage::Entries { .. } => "entries",
        SyncMessage::Push { .. } => "push",
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::AwaitDigest => "awaiting a digest",
        Phase::AwaitSummary => "awaiting a summary",
        Phase::AwaitEntries => "awaiting entries",
        Phase::Done => "the round is over",
    }
}
