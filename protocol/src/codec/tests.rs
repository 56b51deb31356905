//! Tests of the codec: round trips, hostile and malformed input, framing, a wire snapshot.

use expect_test::{expect, Expect};
use proptest::prelude::*;

use super::*;
use crate::desired::Entry;
use crate::sync::SyncMessage;
use crate::testkit::{arb_entry, key, service, stamp, workload};

/// The 9-byte message of NOTES.md: varint tag 0xFD, then a u64 length of 2^40.
const HOSTILE: [u8; 9] = [0xFD, 0, 0, 0, 0, 0, 1, 0, 0];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check(msg: &SyncMessage, expect: Expect) {
    let bytes = encode(msg).expect("encodes");
    expect.assert_eq(&hex(&bytes));
    assert_eq!(&decode::<SyncMessage>(&bytes, MAX_MESSAGE).expect("decodes"), msg);
}

#[test]
fn wire_snapshot_of_sync_messages() {
    check(
        &SyncMessage::Digest { digest: 0x0123_4567_89ab_cdef, entries: 3, gc_floor: None },
        expect!["00fdefcdab89674523010300"],
    );
    let entry = Entry { stamp: stamp(300, "n1"), value: Some(workload(1, 2).into()) };
    check(
        &SyncMessage::Push { gc_floor: Some(stamp(2, "n2")), entries: vec![(key(1), entry)] },
        expect!["030102026e320101000764656661756c74056170702d31fb2c01026e31010100000764656661756c74056170702d310103617070056170702d310200000001046d61696e0664656d6f3a320000000000000000000000000000001e00000000000000000000fb58020a00000000"],
    );
    let svc = service(1);
    let entry = Entry { stamp: stamp(3, "n1"), value: Some(svc.clone().into()) };
    check(
        &SyncMessage::Push { gc_floor: None, entries: vec![(svc.key, entry)] },
        expect!["030001040764656661756c74057376632d3103026e31010101040764656661756c74057376632d3100000001000050010468747470000103617070056170702d310000"],
    );
}

#[test]
fn hostile_length_prefix_is_an_error_not_an_abort() {
    assert!(matches!(decode::<String>(&HOSTILE, MAX_MESSAGE), Err(CodecError::Decode(_))));
    assert!(matches!(decode::<Vec<u8>>(&HOSTILE, MAX_MESSAGE), Err(CodecError::Decode(_))));
    assert!(decode::<Vec<String>>(&HOSTILE, MAX_MESSAGE).is_err());
    // The same length inside a message: Push's entry vector, then a key's namespace string.
    let mut push = vec![3u8];
    push.extend_from_slice(&[0]); // gc_floor: None
    push.extend_from_slice(&HOSTILE);
    assert!(decode::<SyncMessage>(&push, MAX_MESSAGE).is_err());
}

#[test]
fn truncated_and_trailing_bytes_are_errors() {
    let entry = Entry { stamp: stamp(1, "a"), value: Some(workload(1, 1).into()) };
    let msg = SyncMessage::Push { gc_floor: None, entries: vec![(key(1), entry)] };
    let bytes = encode(&msg).expect("encodes");
    for cut in 0..bytes.len() {
        assert!(decode::<SyncMessage>(&bytes[..cut], MAX_MESSAGE).is_err(), "cut at {cut}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        decode::<SyncMessage>(&long, MAX_MESSAGE),
        Err(CodecError::TrailingBytes { trailing: 1 })
    ));
    assert!(matches!(decode::<SyncMessage>(&bytes, bytes.len() - 1), Err(CodecError::FrameTooLarge { .. })));
}

#[test]
fn oversized_messages_are_refused_on_encode() {
    let big = vec![0u8; MAX_MESSAGE];
    assert!(matches!(encode(&big), Err(CodecError::FrameTooLarge { .. })));
    assert!(matches!(frame(&big, 1024), Err(CodecError::FrameTooLarge { .. })));
}

#[test]
fn hostile_frame_prefix_fails_before_buffering() {
    let mut dec = FrameDecoder::new(MAX_MESSAGE);
    dec.push(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]);
    assert!(matches!(dec.next_frame(), Err(CodecError::FrameTooLarge { len: 0xFFFF_FFFF, .. })));
    assert_eq!(dec.buffered(), 0);
    dec.push(&[0; 16]);
    assert!(dec.next_frame().is_err(), "a failed decoder stays failed");
    assert_eq!(dec.buffered(), 0);
    assert!(split_frame(&[0, 0, 0, 9], 8).is_err());
    assert_eq!(split_frame(&[0, 0, 0], 8).expect("short"), None);
    assert_eq!(split_frame(&[0, 0, 0, 2, 7], 8).expect("partial"), None);
}

proptest! {
    #[test]
    fn values_round_trip(v in (any::<u64>(), ".{0,40}", prop::collection::vec(any::<u8>(), 0..64), any::<Option<i32>>())) {
        let bytes = encode(&v).expect("encodes");
        prop_assert_eq!(encoded_len(&v).expect("measures"), bytes.len());
        prop_assert_eq!(decode::<(u64, String, Vec<u8>, Option<i32>)>(&bytes, MAX_MESSAGE).expect("decodes"), v);
    }

    #[test]
    fn sync_messages_round_trip(entries in prop::collection::vec(arb_entry(), 0..8), last in any::<bool>()) {
        let msg = SyncMessage::Entries { gc_floor: Some(stamp(4, "x")), entries, last };
        let bytes = encode(&msg).expect("encodes");
        prop_assert_eq!(decode::<SyncMessage>(&bytes, MAX_MESSAGE).expect("decodes"), msg);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<SyncMessage>(&bytes, MAX_MESSAGE);
        let mut dec = FrameDecoder::new(1024);
        dec.push(&bytes);
        while let Ok(Some(_)) = dec.next_frame() {}
    }

    #[test]
    fn frames_survive_any_split(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..6),
        split in 1usize..17,
    ) {
        let stream: Vec<u8> = payloads.iter().flat_map(|p| frame(p, 1024).expect("small")).collect();
        let mut dec = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for chunk in stream.chunks(split) {
            dec.push(chunk);
            while let Some(f) = dec.next_frame().expect("well-formed stream") {
                got.push(f);
            }
        }
        prop_assert_eq!(got, payloads);
        prop_assert_eq!(dec.buffered(), 0);
    }
}
