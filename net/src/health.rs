//! What a node's `/healthz` answer tells a gateway besides its status: the hash of the node's
//! room options, in a header, so gateways can flag nodes configured differently.

/// The response header carrying a node's room options hash.
pub const ROOM_OPTIONS_HEADER: &str = "ringcast-room-options";

/// Reads a room options hash as a node sends it: 16 lowercase hex digits; anything else is
/// not a hash (`None`), so a peer cannot put arbitrary text into `/nodes`.
pub fn parse_room_options(value: &[u8]) -> Option<String> {
    (value.len() == 16 && value.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_hash_is_a_hash() {
        assert_eq!(
            parse_room_options(b"0123456789abcdef").as_deref(),
            Some("0123456789abcdef")
        );
        for bad in [
            &b""[..],
            b"0123456789abcde",
            b"0123456789ABCDEF",
            b"<script>alert(1)</s",
        ] {
            assert_eq!(parse_room_options(bad), None);
        }
    }
}
