//! The send stamp carried in message content: `lt1 SENDER SEQ MICROS`, written by senders and
//! found by receivers with one substring search, without parsing the JSON around it.
//!
//! Receivers see hundreds of thousands of frames per second, so they look for `"lt1 ` and read
//! three decimal numbers after it; every other frame (user_connected, pongs, …) is ignored.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem::Finder;

/// Microseconds since the Unix epoch (shared by every process on the machine).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What a receiver learns from one stamped message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the sender within this run.
    pub sender: u32,
    /// The sender's sequence number, from 0.
    pub seq: u64,
    /// When it was sent, in Unix microseconds.
    pub sent_micros: u64,
}

/// Builds the frames one sender sends: the JSON text up to the stamp is fixed.
#[derive(Debug, Clone)]
pub struct FrameBuilder {
    head: String,
    /// With a message id: the text between the id's sequence number and the stamp's.
    mid: Option<String>,
    padding: String,
}

impl FrameBuilder {
    /// Frames `{"type":"room_message","room":ROOM,"content":"lt1 …"}`.
    pub fn room_message(room: &str, sender: u32, padding: usize) -> Self {
        let room = serde_json::Value::from(room).to_string();
        Self::new(
            format!(r#"{{"type":"room_message","room":{room},"content":"lt1 {sender} "#),
            padding,
        )
    }

    /// Frames `{"type":"room_message","room":ROOM,"id":"SENDER.SEQ","content":"lt1 …"}`: each
    /// carries an id unique per sender, which asks the server for an `ack` (acks.rs reads the
    /// answers).
    pub fn room_message_with_id(room: &str, sender: u32, padding: usize) -> Self {
        let room = serde_json::Value::from(room).to_string();
        let mut b = Self::new(
            format!(r#"{{"type":"room_message","room":{room},"id":"{sender}."#),
            padding,
        );
        b.mid = Some(format!(r#"","content":"lt1 {sender} "#));
        b
    }

    /// Frames `{"type":"direct_message","target":TARGET,"content":"lt1 …"}`.
    pub fn direct_message(target: &str, sender: u32, padding: usize) -> Self {
        let target = serde_json::Value::from(target).to_string();
        Self::new(
            format!(r#"{{"type":"direct_message","target":{target},"content":"lt1 {sender} "#),
            padding,
        )
    }

    /// Server API `publish` params `{"room":ROOM,"data":"lt1 …"}`: members get the `data` as
    /// their `chat` event's `content`, so the stamp reaches them unchanged.
    pub fn api_publish(room: &str, sender: u32, padding: usize) -> Self {
        let room = serde_json::Value::from(room).to_string();
        Self::new(format!(r#"{{"room":{room},"data":"lt1 {sender} "#), padding)
    }

    fn new(head: String, padding: usize) -> Self {
        let padding = if padding == 0 {
            String::new()
        } else {
            format!(" {}", "x".repeat(padding))
        };
        FrameBuilder {
            head,
            mid: None,
            padding,
        }
    }

    /// The frame text for sequence number `seq`, stamped now.
    pub fn frame(&self, seq: u64) -> String {
        let extra = self.mid.as_deref().map_or(0, |m| m.len() + 20);
        let mut s = String::with_capacity(self.head.len() + extra + self.padding.len() + 48);
        self.push_frame(&mut s, seq);
        s
    }

    /// Appends [`FrameBuilder::frame`] to `out` (a `batch` body gathers many).
    pub fn push_frame(&self, out: &mut String, seq: u64) {
        out.push_str(&self.head);
        if let Some(mid) = self.mid.as_deref() {
            let _ = write!(out, "{seq}");
            out.push_str(mid);
        }
        let _ = write!(out, "{seq} {}{}\"}}", now_micros(), self.padding);
    }

    /// [`FrameBuilder::frame`] with the message `"id"` a sender chooses to be acknowledged.
    pub fn frame_with_id(&self, seq: u64, id: &str) -> String {
        let mut s = self.frame(seq);
        s.pop();
        let _ = write!(s, ",\"id\":{}}}", serde_json::Value::from(id));
        s
    }
}

/// Finds stamps in received frames.
#[derive(Debug, Clone)]
pub struct StampFinder {
    finder: Finder<'static>,
}

impl Default for StampFinder {
    fn default() -> Self {
        StampFinder {
            finder: Finder::new(b"\"lt1 "),
        }
    }
}

impl StampFinder {
    /// The stamp in `frame`, if it carries one.
    pub fn find(&self, frame: &[u8]) -> Option<Stamp> {
        let at = self.finder.find(frame)? + 5;
        let rest = &frame[at..];
        let (sender, rest) = number(rest)?;
        let (seq, rest) = number(rest.strip_prefix(b" ")?)?;
        let (sent_micros, _) = number(rest.strip_prefix(b" ")?)?;
        Some(Stamp {
            sender: u32::try_from(sender).ok()?,
            seq,
            sent_micros,
        })
    }
}

/// A leading decimal number and what follows it.
pub(crate) fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut n = 0u64;
    for &b in &bytes[..digits] {
        n = n * 10 + u64::from(b - b'0');
    }
    Some((n, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_a_server_event() {
        let b = FrameBuilder::room_message("room-1", 7, 10);
        let sent = b.frame(42);
        let v: serde_json::Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(v["type"], "room_message");
        // What a seed server sends back, with Python-style spacing.
        let event = format!(
            r#"{{"event": "chat", "from": "p7", "room": "room-1", "content": {}}}"#,
            v["content"]
        );
        let s = StampFinder::default().find(event.as_bytes()).unwrap();
        assert_eq!((s.sender, s.seq), (7, 42));
        assert!(s.sent_micros > 1_600_000_000_000_000);
        let with_id: serde_json::Value = serde_json::from_str(&b.frame_with_id(43, "m43")).unwrap();
        assert_eq!(with_id["id"], "m43");
        assert_eq!(with_id["room"], "room-1");
        let s = StampFinder::default()
            .find(with_id.to_string().as_bytes())
            .unwrap();
        assert_eq!((s.sender, s.seq), (7, 43));
        let with_id = FrameBuilder::room_message_with_id("room-1", 7, 0).frame(42);
        let v: serde_json::Value = serde_json::from_str(&with_id).unwrap();
        assert_eq!(v["id"], "7.42");
        let s = StampFinder::default().find(with_id.as_bytes()).unwrap();
        assert_eq!((s.sender, s.seq), (7, 42));
        let d = FrameBuilder::direct_message("bob", 3, 0).frame(0);
        assert!(StampFinder::default().find(d.as_bytes()).is_some());
    }

    #[test]
    fn api_params_carry_the_stamp_in_data() {
        let b = FrameBuilder::api_publish("r\"1", 5, 3);
        let mut body = String::from("[");
        b.push_frame(&mut body, 8);
        body.push(',');
        b.push_frame(&mut body, 9);
        body.push(']');
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v[1]["room"], "r\"1");
        // What a member gets: the node puts `data` in the event's `content` as it came.
        let event = format!(
            r#"{{"event":"chat","from":"server","room":"r","content":{}}}"#,
            v[1]["data"]
        );
        let s = StampFinder::default().find(event.as_bytes()).unwrap();
        assert_eq!((s.sender, s.seq), (5, 9));
        assert!(v[1]["data"].as_str().unwrap().ends_with(" xxx"));
    }

    #[test]
    fn ignores_unrelated_frames() {
        let f = StampFinder::default();
        for frame in [
            r#"{"event":"user_connected","user_id":"x"}"#,
            r#"{"event":"chat","from":"a","content":"lt1 "}"#,
            r#"{"event":"chat","from":"a","content":"lt1 1 x 3"}"#,
            r#"{"event":"chat","from":"a","content":"lt1 99999999999999999999 1 3"}"#,
        ] {
            assert_eq!(f.find(frame.as_bytes()), None, "{frame}");
        }
    }
}
