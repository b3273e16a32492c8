//! A stored room message on the bus: a room `chat` event that history gave an offset and an
//! epoch, in a layout a Redis script can write without a serializer.
//!
//! The publish script assigns the offset, appends the message to the room's history and
//! publishes it in one step, so offset order is delivery order; it builds the client frame by
//! appending `N,"epoch":"E"}` to the head the node prepared ([`chat_head`]) and publishes
//!
//! ```text
//! 0x02 OFFSET '\n' EPOCH '\n' SENT_AT_MICROS '\n' ROOM '\n' FRAME
//! ```
//!
//! (decimal numbers; room names never contain a control character, epochs are alphanumeric).
//! The first byte tells it apart from a bincode [`Envelope`](crate::Envelope), whose first byte
//! is its version, 1. Decoding is a scan over the bytes: it allocates nothing and cannot panic.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::EnvelopeError;

/// The first byte of a stored room message on the bus.
pub const STORED_TAG: u8 = 2;

/// Longest epoch accepted from the bus.
pub const MAX_EPOCH_LEN: usize = 64;

/// One stored room message, borrowed from the bus payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredMessage<'a> {
    /// Its offset in the room (≥ 1).
    pub offset: u64,
    /// The room's epoch when it was stored.
    pub epoch: &'a str,
    /// When it was published, in microseconds since the Unix epoch.
    pub sent_at_micros: u64,
    /// The room.
    pub room: &'a str,
    /// The client frame (a `chat` event with `offset` and `epoch`), as members receive it.
    pub frame: &'a str,
}

impl<'a> StoredMessage<'a> {
    /// Reads a payload that starts with [`STORED_TAG`].
    pub fn decode(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        let bad = |what: &str| {
            EnvelopeError::Malformed(bincode::error::DecodeError::OtherString(format!(
                "stored message: {what}"
            )))
        };
        let rest = match bytes.split_first() {
            None => return Err(EnvelopeError::Empty),
            Some((&STORED_TAG, rest)) => rest,
            Some((&v, _)) => return Err(EnvelopeError::UnsupportedVersion(v)),
        };
        let mut fields = rest.splitn(5, |b| *b == b'\n');
        let mut next = |what: &str| fields.next().ok_or_else(|| bad(what));
        let offset = number(next("offset")?)
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad("offset"))?;
        let epoch = next("epoch")?;
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH_LEN
            || !epoch.iter().all(u8::is_ascii_alphanumeric)
        {
            return Err(bad("epoch"));
        }
        let sent_at_micros = number(next("sent_at")?).ok_or_else(|| bad("sent_at"))?;
        let room = std::str::from_utf8(next("room")?).map_err(|_| bad("room"))?;
        let frame = std::str::from_utf8(next("frame")?).map_err(|_| EnvelopeError::FrameNotUtf8)?;
        Ok(StoredMessage {
            offset,
            // Checked above: ASCII alphanumerics.
            epoch: std::str::from_utf8(epoch).map_err(|_| bad("epoch"))?,
            sent_at_micros,
            room,
            frame,
        })
    }

    /// Writes the layout the publish script writes (the in-memory bus and tests use it).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.frame.len() + self.room.len() + 64);
        out.push(STORED_TAG);
        for field in [
            self.offset.to_string().as_bytes(),
            self.epoch.as_bytes(),
            self.sent_at_micros.to_string().as_bytes(),
            self.room.as_bytes(),
        ] {
            out.extend_from_slice(field);
            out.push(b'\n');
        }
        out.extend_from_slice(self.frame.as_bytes());
        out
    }
}

/// A decimal `u64` with no sign, no spaces and at most 20 digits.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[derive(Serialize)]
struct ChatHead<'a> {
    event: &'static str,
    from: &'a str,
    room: &'a str,
    content: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// The head of a room `chat` event that history will number: the JSON object up to and
/// including `"offset":`, to which [`finish_chat`] (or the publish script) appends the offset
/// and the epoch. A message sent with an `id` carries it, so receivers can tell a message
/// delivered again after a history reset (which loses the dedupe record) by `from` + `id`.
pub fn chat_head(from: &str, room: &str, content: &RawValue, id: Option<&str>) -> Vec<u8> {
    let head = ChatHead {
        event: "chat",
        from,
        room,
        content,
        id,
    };
    let mut out = serde_json::to_vec(&head).expect("serializing strings and raw JSON cannot fail");
    // Replace the closing brace with the offset field's start.
    out.pop();
    out.extend_from_slice(br#","offset":"#);
    out
}

/// Completes a [`chat_head`] with its offset and epoch: what the publish script does.
pub fn finish_chat(head: &[u8], offset: u64, epoch: &str) -> String {
    let mut out = String::with_capacity(head.len() + epoch.len() + 32);
    out.push_str(&String::from_utf8_lossy(head));
    out.push_str(&offset.to_string());
    out.push_str(r#","epoch":""#);
    out.push_str(epoch);
    out.push_str(r#""}"#);
    out
}

/// A fresh epoch: 16 random alphanumerics from `random_byte` (the caller's RNG).
pub fn new_epoch(mut random_byte: impl FnMut() -> u8) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..16)
        .map(|_| {
            let b = loop {
                let b = random_byte();
                if usize::from(b) < 248 {
                    break b;
                }
            };
            char::from(ALPHABET[usize::from(b) % ALPHABET.len()])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_chat_head_finished_is_the_chat_event_with_offset_and_epoch() {
        let content = RawValue::from_string(r#"{"n":1,"s":"a\"b"}"#.into()).unwrap();
        let head = chat_head("al\"ice", "r:1", &content, None);
        let frame = finish_chat(&head, 42, "E1");
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event":"chat","from":"al\"ice","room":"r:1",
                               "content":{"n":1,"s":"a\"b"},"offset":42,"epoch":"E1"})
        );
    }

    #[test]
    fn round_trips_and_rejects_what_is_not_a_stored_message() {
        let m = StoredMessage {
            offset: 7,
            epoch: "abcXYZ09",
            sent_at_micros: 1_700_000_000_000_000,
            room: "a:b{c}",
            frame: "{\"x\":\"multi\nline\"}",
        };
        let bytes = m.encode();
        assert_eq!(StoredMessage::decode(&bytes).unwrap(), m);
        for cut in 0..bytes.len() - m.frame.len() {
            assert!(
                StoredMessage::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let bad = |s: &[u8]| StoredMessage::decode(s).is_err();
        assert!(bad(b"\x020\nE\n1\nr\n{}"), "offset 0");
        assert!(bad(b"\x02-1\nE\n1\nr\n{}"));
        assert!(bad(b"\x021\nE-1\n1\nr\n{}"), "epoch not alphanumeric");
        assert!(bad(b"\x021\n\n1\nr\n{}"), "empty epoch");
        assert!(
            bad(b"\x02999999999999999999999\nE\n1\nr\n{}"),
            "offset past u64"
        );
        assert!(bad(b"\x021\nE\n1\nr\n\xff"), "frame not UTF-8");
        assert!(matches!(
            StoredMessage::decode(b"\x01abc"),
            Err(EnvelopeError::UnsupportedVersion(1))
        ));
    }

    #[test]
    fn epochs_are_sixteen_alphanumerics() {
        let mut n = 0u8;
        let e = new_epoch(|| {
            n = n.wrapping_add(97);
            n
        });
        assert_eq!(e.len(), 16);
        assert!(e.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = StoredMessage::decode(&bytes);
            if let Some(first) = bytes.first_mut() { *first = STORED_TAG; }
            let _ = StoredMessage::decode(&bytes);
        }
    }
}
