//! The HTTP/1 head parsers that face the network, fed any bytes under a capped allocator: what
//! they allocate is bounded by their head limits, never by how many bytes they are handed.
//!
//! The cap is armed around each parse only: the allocator refuses (and the process aborts, which
//! fails the test loudly) any allocation that would take the live total past the bound. One
//! `#[test]` runs everything, so no other test thread allocates while the cap is armed.

use std::alloc::System;

use cap::Cap;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ringcast_net::http1::client::{parse_response_head, MAX_HEAD_BYTES};
use ringcast_net::http1::request::{parse_request, HeadLimits};

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

#[test]
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
