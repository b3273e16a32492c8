//! Validation of client ids, room names and message ids, and generation of ids for anonymous clients.

use crate::error::IdError;

/// Longest accepted client id, in bytes (ids are ASCII).
pub const MAX_CLIENT_ID_LEN: usize = 64;
/// Longest accepted room name, in characters.
pub const MAX_ROOM_LEN: usize = 128;
/// Length of a generated client id.
pub const GENERATED_ID_LEN: usize = 20;

/// Checks a client id: 1–64 characters of `[A-Za-z0-9_.:@-]`.
pub fn validate_client_id(id: &str) -> Result<(), IdError> {
    const WHAT: &str = "client_id";
    if id.is_empty() {
        return Err(IdError::Empty { what: WHAT });
    }
    if id.len() > MAX_CLIENT_ID_LEN {
        return Err(IdError::TooLong {
            what: WHAT,
            max: MAX_CLIENT_ID_LEN,
        });
    }
    let ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdError::BadChar { what: WHAT })
    }
}

/// Checks a room name: 1–128 characters, none of them whitespace or control characters.
pub fn validate_room(room: &str) -> Result<(), IdError> {
    const WHAT: &str = "room";
    if room.is_empty() {
        return Err(IdError::Empty { what: WHAT });
    }
    if room.chars().count() > MAX_ROOM_LEN {
        return Err(IdError::TooLong {
            what: WHAT,
            max: MAX_ROOM_LEN,
        });
    }
    if room.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(IdError::BadChar { what: WHAT });
    }
    Ok(())
}

/// The longest message id a client may choose.
pub const MAX_MESSAGE_ID_LEN: usize = 64;

/// Checks a message id: 1–64 characters of `[A-Za-z0-9_.:-]`.
pub fn validate_message_id(id: &str) -> Result<(), IdError> {
    const WHAT: &str = "id";
    if id.is_empty() {
        return Err(IdError::Empty { what: WHAT });
    }
    if id.len() > MAX_MESSAGE_ID_LEN {
        return Err(IdError::TooLong {
            what: WHAT,
            max: MAX_MESSAGE_ID_LEN,
        });
    }
    let ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdError::BadChar { what: WHAT })
    }
}

/// Makes a client id for a client that did not bring one: `anon-` plus 20 random alphanumerics
/// from a caller-supplied source of randomness (so this crate needs no RNG of its own).
pub fn generate_client_id(mut random_byte: impl FnMut() -> u8) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut id = String::with_capacity(5 + GENERATED_ID_LEN);
    id.push_str("anon-");
    for _ in 0..GENERATED_ID_LEN {
        // 62 symbols: reject bytes past the last full multiple to keep the choice uniform.
        let b = loop {
            let b = random_byte();
            if usize::from(b) < 248 {
                break b;
            }
        };
        id.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(validate_client_id("alice").is_ok());
        assert!(validate_client_id("a.b:c@d-e_f9").is_ok());
        assert!(validate_client_id(&"x".repeat(64)).is_ok());
        assert_eq!(
            validate_client_id(""),
            Err(IdError::Empty { what: "client_id" })
        );
        assert!(matches!(
            validate_client_id(&"x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        for bad in ["a b", "a/b", "é", "a\n", "<script>", "a%20"] {
            assert!(
                matches!(validate_client_id(bad), Err(IdError::BadChar { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rooms() {
        assert!(validate_room("lobby").is_ok());
        assert!(validate_room("support-*/ü").is_ok());
        assert!(validate_room(&"é".repeat(128)).is_ok());
        assert!(validate_room(&"é".repeat(129)).is_err());
        assert!(validate_room("").is_err());
        assert!(validate_room("a b").is_err());
        assert!(validate_room("a\tb").is_err());
        assert!(validate_room("a\u{7}").is_err());
    }

    #[test]
    fn generated_ids_are_valid_and_differ() {
        let mut n = 0u8;
        let a = generate_client_id(|| {
            n = n.wrapping_add(97);
            n
        });
        let b = generate_client_id(|| {
            n = n.wrapping_add(31);
            n
        });
        assert!(validate_client_id(&a).is_ok());
        assert!(a.len() >= 16);
        assert_ne!(a, b);
    }
}
