//! The link frame decoder allocates nothing, whatever it is fed: a frame's payload is a slice
//! of the input, so a peer cannot make the decoder hold memory by announcing a large frame.
//!
//! The allocator's cap is armed around each decode at the bytes already allocated, so any
//! allocation inside `decode` aborts the process, which fails the test loudly. One `#[test]`
//! runs everything, so no other test thread allocates while the cap is armed.

use std::alloc::System;

use cap::Cap;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ringcast_net::link::frame::{self, decode, FrameError, GOAWAY, HEADER_LEN, MAX_PAYLOAD};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// Decodes every frame at the front of `buf` with no allocation allowed; the frames' kinds and
/// the bytes used, or the error.
fn decode_all_unallocating(buf: &[u8]) -> (usize, usize, Option<FrameError>) {
    let mut kinds = [0u8; 64];
    let (mut frames, mut at) = (0, 0);
    ALLOC
        .set_limit(ALLOC.allocated())
        .expect("a limit at what is allocated");
    let error = loop {
        match decode(&buf[at..]) {
            Ok(Some((f, n))) => {
                kinds[frames % kinds.len()] = f.kind;
                frames += 1;
                at += n;
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    ALLOC.set_limit(usize::MAX).expect("no limit");
    assert!(kinds.iter().all(|&k| k <= GOAWAY));
    (frames, at, error)
}

/// Bytes that look like frames: valid headers mixed with random ones and random lengths.
fn framed_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = (
        0u8..=GOAWAY + 1,
        any::<u32>(),
        prop_oneof![0u32..64, any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(kind, stream, len, payload)| {
            let mut out = Vec::new();
            frame::encode(&mut out, kind, stream, len, &payload);
            out
        });
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

#[test]
fn decoding_allocates_nothing_on_any_input() {
    // Fixed cases first: a frame at the payload limit, an announced oversize, an empty buffer.
    let mut big = Vec::new();
    frame::encode(
        &mut big,
        frame::DATA,
        1,
        MAX_PAYLOAD as u32,
        &vec![1; MAX_PAYLOAD],
    );
    assert_eq!(decode_all_unallocating(&big), (1, big.len(), None));
    let mut huge = Vec::new();
    frame::encode(&mut huge, frame::OPEN, 1, u32::MAX, &[]);
    assert_eq!(
        decode_all_unallocating(&huge),
        (0, 0, Some(FrameError::TooLarge(u32::MAX)))
    );
    assert_eq!(decode_all_unallocating(&[]), (0, 0, None));
    assert_eq!(
        decode_all_unallocating(&huge[..HEADER_LEN - 1]),
        (0, 0, None)
    );

    let mut runner = TestRunner::new(Config {
        cases: 2048,
        ..Config::default()
    });
    let inputs = prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), framed_bytes()];
    runner
        .run(&inputs, |bytes| {
            let (_, used, _) = decode_all_unallocating(&bytes);
            prop_assert!(used <= bytes.len());
            Ok(())
        })
        .unwrap();
}
