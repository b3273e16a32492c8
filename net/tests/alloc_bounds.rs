//! The decoders that face the network, fed any bytes under a capped allocator: the HTTP/1 head
//! parsers allocate within their head limits (a response head: nothing), never in proportion to
//! the bytes they are handed; the link frame decoder allocates nothing at all (a frame's payload
//! is a slice of the input, so a peer cannot make it hold memory by announcing a large frame).
//!
//! The cap is armed around each decode only: the allocator refuses (and the process aborts,
//! which fails the test loudly) any allocation that would take the live total past the bound.
//! One `#[test]` runs everything, so no other test thread allocates while the cap is armed.

use std::alloc::System;

use cap::Cap;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ringcast_net::http1::client::{parse_response_head, MAX_HEAD_BYTES};
use ringcast_net::http1::request::{parse_request, HeadLimits};
use ringcast_net::link::frame::{self, decode, FrameError, GOAWAY, HEADER_LEN, MAX_PAYLOAD};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// Runs `f` with at most `bound` bytes of new allocations allowed.
fn capped<T>(bound: usize, f: impl FnOnce() -> T) -> T {
    ALLOC
        .set_limit(ALLOC.allocated().saturating_add(bound))
        .expect("a limit above what is allocated");
    let out = f();
    ALLOC.set_limit(usize::MAX).expect("no limit");
    out
}

#[test]
fn decoders_allocate_within_their_bounds_on_any_input() {
    head_parsers_allocate_within_their_bounds_on_any_input();
    link_frame_decoding_allocates_nothing_on_any_input();
}

/// What a request head read under `limits` may cost: the request it becomes (a copy of the
/// target, of each header's name and value, and the header map's slots), whatever follows it.
fn request_bound(limits: HeadLimits) -> usize {
    2 * limits.bytes + 200 * limits.headers + 16 * 1024
}

/// What a response head may cost: nothing when it reads, the quoted start of the buffer in the
/// message when it does not.
const RESPONSE_BOUND: usize = 1024;

/// A head start, then header lines, noise and blank lines, then up to 256 KiB more: heads that
/// end within the limits, heads that never end, and heads followed by far more than the limit.
fn head_then_more(start: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"Host: x\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        "[a-zA-Z-]{1,12}: [ -~\\x80-\\u{ff}]{0,80}\r\n".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    (
        proptest::sample::select(start.to_vec()),
        proptest::collection::vec(line, 0..300),
        any::<bool>(),
        0usize..256 * 1024,
        any::<u8>(),
    )
        .prop_map(|(start, lines, end, more, fill)| {
            let mut bytes = start.to_vec();
            for l in lines {
                bytes.extend_from_slice(&l);
            }
            if end {
                bytes.extend_from_slice(b"\r\n\r\n");
            }
            bytes.resize(bytes.len() + more, fill);
            bytes
        })
}

fn head_parsers_allocate_within_their_bounds_on_any_input() {
    let mut runner = TestRunner::new(Config {
        cases: 500,
        failure_persistence: None,
        ..Config::default()
    });

    let requests: &'static [&'static [u8]] = &[
        b"GET /ws?client_id=a HTTP/1.1\r\n",
        b"POST / HTTP/1.0\r\n",
        b"",
    ];
    runner
        .run(&head_then_more(requests), |bytes| {
            for limits in [HeadLimits::NODE, HeadLimits::client(1024)] {
                let _ = capped(request_bound(limits), || {
                    parse_request(&bytes, limits).map(|r| r.map(|(_, len)| len))
                });
            }
            Ok(())
        })
        .expect("request heads");

    let responses: &'static [&'static [u8]] = &[
        b"HTTP/1.1 101 Switching Protocols\r\n",
        b"HTTP/1.0 200 OK\r\n",
        b"",
    ];
    runner
        .run(&head_then_more(responses), |bytes| {
            let _ = capped(RESPONSE_BOUND, || {
                parse_response_head(&bytes).map(|r| r.map(|(head, len)| (head.status, len)))
            });
            Ok(())
        })
        .expect("response heads");

    // The largest heads each accepts, then a megabyte more.
    let mut big = b"GET /ws HTTP/1.1\r\n".to_vec();
    for i in 0..HeadLimits::NODE.headers - 1 {
        big.extend_from_slice(format!("x-{i}: ").as_bytes());
        big.resize(big.len() + 140, b'v');
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"\r\n");
    assert!(big.len() <= HeadLimits::NODE.bytes);
    big.resize(big.len() + (1 << 20), b'x');
    let read = capped(request_bound(HeadLimits::NODE), || {
        parse_request(&big, HeadLimits::NODE).map(|r| r.map(|(req, _)| req.headers().len()))
    });
    assert_eq!(read, Ok(Some(HeadLimits::NODE.headers - 1)));

    // A response head reads without allocating at all.
    let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..31 {
        big.extend_from_slice(format!("x-{i}: ").as_bytes());
        big.resize(big.len() + 400, b'v');
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"\r\n");
    assert!(big.len() <= MAX_HEAD_BYTES);
    big.resize(big.len() + (1 << 20), b'x');
    let read = capped(0, || {
        parse_response_head(&big).map(|r| r.map(|(head, _)| head.headers().count()))
    });
    assert_eq!(read, Ok(Some(31)));
}

/// Decodes every frame at the front of `buf` with no allocation allowed; the frames' kinds and
/// the bytes used, or the error.
fn decode_all_unallocating(buf: &[u8]) -> (usize, usize, Option<FrameError>) {
    let mut kinds = [0u8; 64];
    let (mut frames, mut at) = (0, 0);
    let error = capped(0, || loop {
        match decode(&buf[at..]) {
            Ok(Some((f, n))) => {
                kinds[frames % kinds.len()] = f.kind;
                frames += 1;
                at += n;
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    });
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

fn link_frame_decoding_allocates_nothing_on_any_input() {
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
