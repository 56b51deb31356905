//! Node requests: the messages of a node-request stream, on which a node asks a peer to
//! cordon, uncordon or drain *itself*, or how far its drain has got. Pure types and limits;
//! the stream I/O is the node's.
//!
//! One exchange per stream: the asker sends one [`NodeRequest`] and finishes its side; the
//! peer applies it to itself (its cordon flag is its own gossip state, which only it
//! writes) and answers with one [`NodeAnswer`]. A request is decoded with
//! [`MAX_REQUEST_BYTES`], an answer with [`MAX_ANSWER_BYTES`] and then checked
//! ([`NodeAnswer::check`]): a peer's bytes never make the reader allocate more, or trust
//! an answer that contradicts itself.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};

/// The largest request a node reads: a tag and a bool.
pub const MAX_REQUEST_BYTES: usize = 16;
/// The largest answer a node reads.
pub const MAX_ANSWER_BYTES: usize = 96 * 1024;
/// The most pod names a [`NodeStatus`] lists; it counts all of them.
pub const MAX_LISTED_PODS: usize = 256;
/// The listed names' bytes stop short of this, so an answer always fits
/// [`MAX_ANSWER_BYTES`] whatever the names' lengths.
pub const LISTED_BYTES: usize = 64 * 1024;
/// A refusal's message is cut to this many bytes.
pub const MAX_REFUSAL_BYTES: usize = 1024;

/// What a node is asked to do to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// Cordon (`true`: no new pods are placed on the node) or uncordon it; uncordoning
    /// ends a drain.
    Cordon { cordoned: bool },
    /// Cordon the node and evict its pods within disruption budgets.
    Drain,
    /// Where the node's drain stands; changes nothing.
    DrainStatus,
}

impl NodeRequest {
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes, MAX_REQUEST_BYTES)
    }
}

/// A node's answer to every request, after it applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeAnswer {
    Status(NodeStatus),
    /// The node did not apply the request (e.g. it could not persist it); nothing changed.
    Refused {
        message: String,
    },
}

/// The node's cordon and drain state, and the pods a drain still waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub cordoned: bool,
    pub draining: bool,
    /// How many pods other than DaemonSet pods the node runs (stopping ones included).
    pub pods: u32,
    /// The first of them (`namespace/name`, in key order), at most [`MAX_LISTED_PODS`].
    pub listed: Vec<String>,
}

impl NodeStatus {
    /// The status of a node running `pods` (its non-DaemonSet pods, in key order): all
    /// are counted, the first are listed within [`MAX_LISTED_PODS`] and [`LISTED_BYTES`].
    pub fn new(cordoned: bool, draining: bool, pods: impl IntoIterator<Item = String>) -> NodeStatus {
        let mut status = NodeStatus { cordoned, draining, pods: 0, listed: Vec::new() };
        let mut bytes = 0;
        let mut full = false;
        for pod in pods {
            status.pods = status.pods.saturating_add(1);
            // Each name costs its bytes and at most a 9-byte length varint.
            full |= status.listed.len() == MAX_LISTED_PODS || bytes + pod.len() + 9 > LISTED_BYTES;
            if !full {
                bytes += pod.len() + 9;
                status.listed.push(pod);
            }
        }
        status
    }
}

/// An answer a node must not trust; the asker drops it.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The bytes are no answer (malformed, truncated, over [`MAX_ANSWER_BYTES`]).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The answer lists more pods than allowed or than it counts.
    #[error("the answer lists {listed} pods but counts {pods} (at most {MAX_LISTED_PODS} may be listed)")]
    Listed { listed: usize, pods: u32 },
    /// A refusal's message is longer than [`MAX_REFUSAL_BYTES`].
    #[error("a refusal message of {len} bytes (at most {MAX_REFUSAL_BYTES})")]
    Refusal { len: usize },
}

impl NodeAnswer {
    /// A refusal, its message cut to [`MAX_REFUSAL_BYTES`] at a character boundary.
    pub fn refused(message: &str) -> NodeAnswer {
        let mut end = message.len().min(MAX_REFUSAL_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        NodeAnswer::Refused { message: message[..end].to_owned() }
    }

    /// Whether the answer is consistent: what [`NodeStatus::new`] and
    /// [`NodeAnswer::refused`] produce always is.
    pub fn check(self) -> Result<NodeAnswer, AnswerError> {
        match &self {
            NodeAnswer::Status(s)
                if s.listed.len() > MAX_LISTED_PODS || s.listed.len() as u64 > u64::from(s.pods) =>
            {
                Err(AnswerError::Listed { listed: s.listed.len(), pods: s.pods })
            }
            NodeAnswer::Refused { message } if message.len() > MAX_REFUSAL_BYTES => {
                Err(AnswerError::Refusal { len: message.len() })
            }
            _ => Ok(self),
        }
    }

    /// Decodes and checks an answer.
    pub fn decode(bytes: &[u8]) -> Result<NodeAnswer, AnswerError> {
        codec::decode::<NodeAnswer>(bytes, MAX_ANSWER_BYTES)?.check()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use expect_test::{expect, Expect};
    use proptest::prelude::*;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn check_wire<T: Serialize>(value: &T, expect: Expect) {
        expect.assert_eq(&hex(&codec::encode(value).unwrap()));
    }

    #[test]
    fn wire_snapshots_and_round_trips() {
        check_wire(&NodeRequest::Cordon { cordoned: true }, expect!["0001"]);
        check_wire(&NodeRequest::Cordon { cordoned: false }, expect!["0000"]);
        check_wire(&NodeRequest::Drain, expect!["01"]);
        check_wire(&NodeRequest::DrainStatus, expect!["02"]);
        for req in [NodeRequest::Cordon { cordoned: true }, NodeRequest::Drain, NodeRequest::DrainStatus] {
            assert_eq!(NodeRequest::decode(&codec::encode(&req).unwrap()).unwrap(), req);
        }

        let status = NodeStatus::new(true, true, ["default/web-1".to_owned(), "default/web-2".to_owned()]);
        let answer = NodeAnswer::Status(status);
        check_wire(&answer, expect!["00010102020d64656661756c742f7765622d310d64656661756c742f7765622d32"]);
        assert_eq!(NodeAnswer::decode(&codec::encode(&answer).unwrap()).unwrap(), answer);

        let refused = NodeAnswer::refused("writing node-config.json: disk full");
        check_wire(
            &refused,
            expect!["012377726974696e67206e6f64652d636f6e6669672e6a736f6e3a206469736b2066756c6c"],
        );
        assert_eq!(NodeAnswer::decode(&codec::encode(&refused).unwrap()).unwrap(), refused);
    }

    #[test]
    fn oversized_truncated_and_unknown_input_is_refused() {
        // Over the request limit: refused before decoding.
        let big = vec![0x00; MAX_REQUEST_BYTES + 1];
        assert!(matches!(NodeRequest::decode(&big), Err(CodecError::FrameTooLarge { .. })));
        // An unknown variant, a bool that is not 0 or 1, trailing bytes, nothing at all.
        for bytes in [&[0x03][..], &[0x00, 0x02], &[0x01, 0x00], &[]] {
            assert!(NodeRequest::decode(bytes).is_err(), "{bytes:?} decoded");
        }
        // An answer that claims a 1 TB name allocates nothing and fails.
        let hostile = [0x00, 0x01, 0x01, 0x01, 0x01, 0xfd, 0, 0, 0, 0, 0, 1, 0, 0];
        assert!(NodeAnswer::decode(&hostile).is_err());
        // A truncated answer is an error, not a panic.
        let bytes =
            codec::encode(&NodeAnswer::Status(NodeStatus::new(false, true, ["a/b".to_owned()]))).unwrap();
        assert!(NodeAnswer::decode(&bytes[..bytes.len() - 2]).is_err());
        let big = vec![0x01; MAX_ANSWER_BYTES + 1];
        assert!(matches!(
            NodeAnswer::decode(&big),
            Err(AnswerError::Codec(CodecError::FrameTooLarge { .. }))
        ));
    }

    #[test]
    fn answers_that_contradict_themselves_are_refused() {
        let lying = NodeAnswer::Status(NodeStatus {
            cordoned: true,
            draining: true,
            pods: 1,
            listed: vec!["a/b".into(), "a/c".into()],
        });
        let err = NodeAnswer::decode(&codec::encode(&lying).unwrap()).unwrap_err();
        expect!["the answer lists 2 pods but counts 1 (at most 256 may be listed)"]
            .assert_eq(&err.to_string());

        let long = NodeAnswer::Refused { message: "x".repeat(MAX_REFUSAL_BYTES + 1) };
        assert!(matches!(
            NodeAnswer::decode(&codec::encode(&long).unwrap()),
            Err(AnswerError::Refusal { .. })
        ));
        let cut = NodeAnswer::refused(&"é".repeat(MAX_REFUSAL_BYTES));
        assert!(matches!(&cut, NodeAnswer::Refused { message } if message.len() == MAX_REFUSAL_BYTES));
        assert!(cut.check().is_ok());
    }

    #[test]
    fn a_status_counts_every_pod_and_lists_what_fits() {
        let many = NodeStatus::new(true, true, (0..1000).map(|i| format!("default/web-{i:04}")));
        assert_eq!((many.pods, many.listed.len()), (1000, MAX_LISTED_PODS));
        assert_eq!(many.listed[0], "default/web-0000");
        // Names as long as a name can be still fit the answer limit.
        let long = NodeStatus::new(false, true, (0..1000).map(|i| format!("{i}{}", "n".repeat(5000))));
        assert_eq!(long.pods, 1000);
        assert!(!long.listed.is_empty() && long.listed.len() < MAX_LISTED_PODS);
        for status in [many, long] {
            let bytes = codec::encode(&NodeAnswer::Status(status.clone())).unwrap();
            assert!(bytes.len() <= MAX_ANSWER_BYTES);
            assert_eq!(NodeAnswer::decode(&bytes).unwrap(), NodeAnswer::Status(status));
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = NodeRequest::decode(&bytes);
            let _ = NodeAnswer::decode(&bytes);
        }

        #[test]
        fn statuses_round_trip(
            cordoned: bool,
            draining: bool,
            pods in proptest::collection::vec("[a-z0-9-]{1,40}/[a-z0-9-]{1,60}", 0..300),
        ) {
            let answer = NodeAnswer::Status(NodeStatus::new(cordoned, draining, pods));
            let bytes = codec::encode(&answer).unwrap();
            prop_assert!(bytes.len() <= MAX_ANSWER_BYTES);
            prop_assert_eq!(NodeAnswer::decode(&bytes).unwrap(), answer);
        }
    }
}
