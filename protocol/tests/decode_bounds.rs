//! The decoders that face the network, fed hostile bytes under a capped allocator: none may
//! panic, overflow the stack or allocate past its bound, whatever the input.
//!
//! The cap is armed around each decode only: the allocator refuses (and the process aborts, which
//! fails the test loudly) any allocation that would take the live total past the bound, so a
//! decoder that trusts a length prefix is caught even when it would have freed the memory again.
//! One `#[test]` runs everything, so no other test thread allocates while the cap is armed.

use std::alloc::System;

use cap::Cap;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ringcast_protocol::envelope::MAX_ENVELOPE_BYTES;
use ringcast_protocol::{ClientMessage, Envelope, Target, ENVELOPE_VERSION};

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

/// What a client frame of `len` bytes may cost to parse: a copy of the text for escaped
/// strings and error messages, and a little fixed overhead.
fn json_bound(len: usize) -> usize {
    2 * len + 16 * 1024
}

/// What an envelope of `len` bytes may cost to decode: copies of its fields, and at most the
/// envelope limit for a length prefix the decoder has not yet found to be a lie.
fn envelope_bound(len: usize) -> usize {
    MAX_ENVELOPE_BYTES + 2 * len + 16 * 1024
}

fn envelope_bytes(room: &str, frame: &[u8]) -> Vec<u8> {
    Envelope::new("node-1", 7, Target::Room(room.into()), frame)
        .encode()
        .expect("encodes")
        .to_vec()
}

/// A valid envelope with bytes overwritten, inserted or cut, and length prefixes that claim
/// more than is there: reaches the decoder's inner paths, where random bytes rarely get.
fn mutated_envelope() -> impl Strategy<Value = Vec<u8>> {
    let base = ("[a-z]{0,16}", proptest::collection::vec(any::<u8>(), 0..64))
        .prop_map(|(room, frame)| envelope_bytes(&room, &frame));
    let edit = (any::<usize>(), any::<u8>(), 0u8..4);
    (base, proptest::collection::vec(edit, 0..6)).prop_map(|(mut bytes, edits)| {
        for (at, byte, how) in edits {
            let at = at % bytes.len();
            match how {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 => bytes.truncate(at.max(1)),
                // A varint that claims u32::MAX or u64::MAX bytes.
                _ => {
                    let claim: &[u8] = if byte % 2 == 0 {
                        &[0xfc, 0xff, 0xff, 0xff, 0xff]
                    } else {
                        &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]
                    };
                    bytes.splice(at..at, claim.iter().copied());
                }
            }
        }
        bytes
    })
}

/// JSON-shaped client frames: known types and fields, wrong types, escapes, deep nesting.
fn client_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("\"r\\u00e9\\n\"".to_owned()),
        "\"[ -~]{0,40}\"",
        "[0-9]{1,25}",
        (1usize..400).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        (1usize..20_000).prop_map(|d| "{\"a\":".repeat(d)),
    ];
    let key = prop_oneof![
        Just("type"),
        Just("room"),
        Just("content"),
        Just("target"),
        Just("target_user"),
        Just("token"),
        Just("x"),
    ];
    let kind = prop_oneof![
        Just("chat"),
        Just("join_room"),
        Just("leave_room"),
        Just("room_message"),
        Just("direct_message"),
        Just("refresh"),
        Just("ping"),
    ];
    (
        kind,
        proptest::collection::vec((key, value), 0..6),
        any::<bool>(),
    )
        .prop_map(|(kind, fields, close)| {
            let mut s = format!("{{\"type\":\"{kind}\"");
            for (k, v) in fields {
                s.push_str(&format!(",\"{k}\":{v}"));
            }
            if close {
                s.push('}');
            }
            s
        })
}

fn parse_capped(text: &str) -> Result<&'static str, ringcast_protocol::ParseError> {
    capped(json_bound(text.len()), || {
        ClientMessage::parse(text).map(|m| m.kind())
    })
}

#[test]
fn network_decoders_stay_within_their_bounds_on_any_input() {
    let mut runner = TestRunner::new(Config {
        cases: 2_000,
        failure_persistence: None,
        ..Config::default()
    });

    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
            let _ = capped(envelope_bound(bytes.len()), || Envelope::decode(&bytes));
            let mut versioned = bytes.clone();
            if let Some(first) = versioned.first_mut() {
                *first = ENVELOPE_VERSION;
            }
            let _ = capped(envelope_bound(versioned.len()), || {
                Envelope::decode(&versioned)
            });
            Ok(())
        })
        .expect("random bytes as an envelope");

    runner
        .run(&mutated_envelope(), |bytes| {
            let _ = capped(envelope_bound(bytes.len()), || Envelope::decode(&bytes));
            Ok(())
        })
        .expect("a mutated envelope");

    runner
        .run(&client_text(), |text| {
            let _ = parse_capped(&text);
            Ok(())
        })
        .expect("a JSON-shaped client frame");

    runner
        .run(&".{0,300}", |text| {
            let _ = parse_capped(&text);
            Ok(())
        })
        .expect("arbitrary text as a client frame");

    // The largest frame a node accepts, at its worst: nesting deep enough to overflow the stack
    // of a naive recursive parser.
    let deep = format!(
        "{{\"type\":\"chat\",\"content\":{}",
        "[".repeat(64 * 1024 - 30)
    );
    assert!(
        parse_capped(&deep).is_err(),
        "unbalanced nesting is refused"
    );

    // A length prefix claiming more than the limit.
    let mut huge = vec![ENVELOPE_VERSION];
    huge.extend([0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    let decoded = capped(envelope_bound(huge.len()), || Envelope::decode(&huge));
    assert!(decoded.is_err(), "a length past the limit is refused");
}
