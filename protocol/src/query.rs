//! Reading one parameter out of an upgrade URL's query string, percent-decoded.
//!
//! The gateway and the node both need the `client_id` (and later the `token`) parameter and must
//! agree byte for byte on what it decodes to, so the one implementation lives here.

use std::borrow::Cow;

/// The first value of `name` in `query` (the part after `?`), percent- and `+`-decoded.
/// `None` when absent; `Some(Err(()))` when its escapes are malformed or not UTF-8.
#[allow(clippy::result_unit_err)]
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Result<Cow<'a, str>, ()>> {
    let query = query?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(s: &str) -> Result<Cow<'_, str>, ()> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(())?;
                let hex = std::str::from_utf8(hex).map_err(|_| ())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_decodes() {
        assert_eq!(query_param(None, "client_id"), None);
        assert_eq!(query_param(Some("a=1"), "client_id"), None);
        assert_eq!(
            query_param(Some("a=1&client_id=bob&client_id=eve"), "client_id"),
            Some(Ok(Cow::Borrowed("bob")))
        );
        assert_eq!(
            query_param(Some("client_id=a%40b+c"), "client_id")
                .unwrap()
                .unwrap(),
            "a@b c"
        );
        assert_eq!(
            query_param(Some("client_id"), "client_id"),
            Some(Ok(Cow::Borrowed("")))
        );
        assert_eq!(
            query_param(Some("client_id=%zz"), "client_id"),
            Some(Err(()))
        );
        assert_eq!(
            query_param(Some("client_id=%f"), "client_id"),
            Some(Err(()))
        );
        assert_eq!(
            query_param(Some("client_id=%ff"), "client_id"),
            Some(Err(()))
        );
    }
}
