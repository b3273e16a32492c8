//! The one check of a WebSocket upgrade request (RFC 6455 §4.2.1), and the one table of the
//! answers a refused upgrade gets: the node and the gateway both call [`check`], and both answer
//! a refusal with [`Refusal::response`], so a client sees the same status and code from either.
//!
//! Everything a client can get wrong is answered with an HTTP status and a JSON body
//! (`{"error": code, "message": …}`) before any WebSocket exists, so a bad handshake never costs
//! a session. Pure: no I/O, no tokio; the request head is read by `crate::http1_io`.
//!
//! The table of statuses, codes and headers is README's "Upgrade answers"; each [`Refusal`]
//! is one of its rows, [`Refusal::status`] and [`Refusal::code`] say which.
//!
//! [`check`] runs in the table's order and the first check that fails answers. A wrong
//! `Sec-WebSocket-Version` gets 400, as in RFC 6455 §4.4's example, with the version this server
//! speaks: 426 here means "this is not a WebSocket upgrade at all", which a client that offered
//! the wrong version did send.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use ringcast_protocol::{query_param, validate_client_id};
use tungstenite::handshake::derive_accept_key;

use crate::http1::request::HeadError;
use crate::http1::response::{json_error, Body};

/// Why an upgrade request is refused: one row of the module's table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The head could not be read as an HTTP/1 request (the detail says what was wrong).
    #[error("{0}")]
    MalformedHead(&'static str),
    /// The head is past the size or header-count limit.
    #[error("the request head is too large")]
    HeadTooLarge,
    /// HTTP/1.0, or the HTTP/2 connection preface.
    #[error("WebSocket upgrades need HTTP/1.1")]
    BadHttpVersion,
    /// A method other than `GET`.
    #[error("WebSocket upgrades use GET")]
    MethodNotAllowed,
    /// Not a WebSocket upgrade: `Upgrade: websocket` or `Connection: Upgrade` is missing.
    #[error("this endpoint speaks WebSocket only (Upgrade: websocket, Connection: Upgrade)")]
    UpgradeRequired,
    /// `Sec-WebSocket-Version` is missing or not 13.
    #[error("Sec-WebSocket-Version must be 13")]
    BadWebSocketVersion,
    /// `Sec-WebSocket-Key` is missing, repeated, or not the base64 of 16 bytes.
    #[error("Sec-WebSocket-Key must be given once, as the base64 of 16 bytes")]
    BadWebSocketKey,
    /// The `client_id` query parameter is not a valid client id (the detail says why).
    #[error("{0}")]
    InvalidClientId(&'static str),
    /// A valid upgrade that did not open its connection as `GET /ws ` or `GET /ws?`: only such
    /// connections are upgraded (see `crate::detect`).
    #[error(
        "a WebSocket upgrade must be the first request on its connection, with the target /ws \
         or /ws?query (origin form)"
    )]
    UnsupportedUpgrade,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Refusal::MalformedHead(_)
            | Refusal::BadHttpVersion
            | Refusal::BadWebSocketVersion
            | Refusal::BadWebSocketKey
            | Refusal::InvalidClientId(_)
            | Refusal::UnsupportedUpgrade => StatusCode::BAD_REQUEST,
        }
    }

    /// Every [`Refusal::code`], for metrics whose labels exist before the first refusal.
    pub const CODES: [&'static str; 9] = [
        "bad_request",
        "headers_too_large",
        "bad_http_version",
        "method_not_allowed",
        "upgrade_required",
        "bad_websocket_version",
        "bad_websocket_key",
        "invalid_client_id",
        "unsupported_upgrade",
    ];

    /// The stable, machine-readable code of the JSON body (also a metrics label).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MalformedHead(_) => "bad_request",
            Refusal::HeadTooLarge => "headers_too_large",
            Refusal::BadHttpVersion => "bad_http_version",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::UpgradeRequired => "upgrade_required",
            Refusal::BadWebSocketVersion => "bad_websocket_version",
            Refusal::BadWebSocketKey => "bad_websocket_key",
            Refusal::InvalidClientId(_) => "invalid_client_id",
            Refusal::UnsupportedUpgrade => "unsupported_upgrade",
        }
    }

    /// The refusal of a request whose head could not be read, or `None` when there is nobody
    /// to answer (the client closed first).
    pub fn of_head(error: HeadError) -> Option<Refusal> {
        match error {
            HeadError::Closed => None,
            HeadError::TooLarge => Some(Refusal::HeadTooLarge),
            HeadError::Invalid(why) => Some(Refusal::MalformedHead(why)),
        }
    }

    /// The answer: the status, the headers the HTTP and WebSocket RFCs ask of this refusal,
    /// `Connection: close` (a client whose upgrade failed has nothing more to say on this
    /// connection) and the JSON body.
    pub fn response(&self) -> Response<Body> {
        let mut resp = json_error(self.status(), self.code(), &self.to_string());
        let headers = resp.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        match self {
            // RFC 9110 §15.5.6: a 405 says which methods are allowed.
            Refusal::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to; §7.8: the Upgrade
            // header goes with an `upgrade` connection option.
            Refusal::UpgradeRequired => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(
                    header::CONNECTION,
                    HeaderValue::from_static("Upgrade, close"),
                );
            }
            // RFC 6455 §4.4: the versions this server speaks.
            Refusal::BadWebSocketVersion => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
        resp
    }
}

/// An upgrade that may proceed.
#[derive(Debug)]
pub struct Accepted {
    /// The `Sec-WebSocket-Accept` value.
    pub accept_key: String,
    /// The client id from the query, if one was given.
    pub client_id: Option<String>,
}

/// Whether any `name` header lists `token` (comma-separated, any case).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether `key` is the base64 of 16 bytes: 22 characters of the base64 alphabet and `==`.
fn key_is_valid(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Checks the handshake and the `client_id` query parameter, in the order of the module's table.
pub fn check<B>(req: &Request<B>) -> Result<Accepted, Refusal> {
    if req.version() != Version::HTTP_11 {
        return Err(Refusal::BadHttpVersion);
    }
    if req.method() != Method::GET {
        return Err(Refusal::MethodNotAllowed);
    }
    let headers = req.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(Refusal::UpgradeRequired);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Refusal::BadWebSocketVersion);
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if key_is_valid(key.as_bytes()) => key,
        _ => return Err(Refusal::BadWebSocketKey),
    };
    let client_id = match query_param(req.uri().query(), "client_id") {
        None => None,
        Some(Ok(id)) => match validate_client_id(&id) {
            Ok(()) => Some(id.into_owned()),
            Err(_) => {
                return Err(Refusal::InvalidClientId(
                    "client_id must be 1-64 characters of [A-Za-z0-9_.:@-]",
                ))
            }
        },
        Some(Err(())) => {
            return Err(Refusal::InvalidClientId(
                "client_id is not valid percent-encoded UTF-8",
            ))
        }
    };
    Ok(Accepted {
        accept_key: derive_accept_key(key.as_bytes()),
        client_id,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_lists_every_refusal_once() {
        use super::Refusal::*;
        let all = [
            MalformedHead("x"),
            HeadTooLarge,
            BadHttpVersion,
            MethodNotAllowed,
            UpgradeRequired,
            BadWebSocketVersion,
            BadWebSocketKey,
            InvalidClientId("x"),
            UnsupportedUpgrade,
        ];
        let codes: Vec<&str> = all.iter().map(|r| r.code()).collect();
        assert_eq!(codes, super::Refusal::CODES);
    }

    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req(uri: &str) -> http::request::Builder {
        Request::builder()
            .uri(uri)
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", KEY)
    }

    fn refusal(r: Request<()>) -> Refusal {
        check(&r).unwrap_err()
    }

    #[test]
    fn accepts_a_valid_upgrade() {
        let ok = check(&req("/ws?client_id=alice").body(()).unwrap()).unwrap();
        // The RFC 6455 example key and answer.
        assert_eq!(ok.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(ok.client_id.as_deref(), Some("alice"));
        let ok = check(&req("/ws").body(()).unwrap()).unwrap();
        assert!(ok.client_id.is_none());
        // Tokens in any case, among others.
        let r = Request::get("/ws?client_id=a%40b")
            .header("upgrade", "WebSocket")
            .header("connection", "keep-alive")
            .header("connection", "UPGRADE")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", KEY)
            .body(())
            .unwrap();
        assert_eq!(check(&r).unwrap().client_id.as_deref(), Some("a@b"));
    }

    /// A valid upgrade to `/ws` with header `name` set to `value`, or removed when `None`.
    fn with(name: &'static str, value: Option<&'static str>) -> Request<()> {
        let mut r = req("/ws").body(()).unwrap();
        match value {
            Some(v) => r.headers_mut().insert(name, HeaderValue::from_static(v)),
            None => r.headers_mut().remove(name),
        };
        r
    }

    #[test]
    fn each_check_has_its_status_and_code() {
        let cases = [
            (
                req("/ws").version(Version::HTTP_10).body(()).unwrap(),
                400,
                "bad_http_version",
            ),
            (
                req("/ws").method("POST").body(()).unwrap(),
                405,
                "method_not_allowed",
            ),
            (
                req("/ws").method("HEAD").body(()).unwrap(),
                405,
                "method_not_allowed",
            ),
            (
                Request::get("/ws").body(()).unwrap(),
                426,
                "upgrade_required",
            ),
            (with("upgrade", Some("h2c")), 426, "upgrade_required"),
            (with("upgrade", None), 426, "upgrade_required"),
            (
                with("connection", Some("keep-alive")),
                426,
                "upgrade_required",
            ),
            (
                with("sec-websocket-version", Some("8")),
                400,
                "bad_websocket_version",
            ),
            (
                with("sec-websocket-version", None),
                400,
                "bad_websocket_version",
            ),
            (with("sec-websocket-key", None), 400, "bad_websocket_key"),
            (
                req("/ws?client_id=a%20b").body(()).unwrap(),
                400,
                "invalid_client_id",
            ),
            (
                req("/ws?client_id=").body(()).unwrap(),
                400,
                "invalid_client_id",
            ),
            (
                req("/ws?client_id=%zz").body(()).unwrap(),
                400,
                "invalid_client_id",
            ),
        ];
        for (r, status, code) in cases {
            let what = format!("{} {:?} {:?}", r.method(), r.version(), r.headers());
            let refused = refusal(r);
            assert_eq!(refused.status().as_u16(), status, "{what}");
            assert_eq!(refused.code(), code, "{what}");
        }
    }

    #[test]
    fn only_one_base64_key_of_16_bytes_passes() {
        let with_key = |keys: &[&str]| {
            let mut r = req("/ws").body(()).unwrap();
            r.headers_mut().remove("sec-websocket-key");
            for k in keys {
                r.headers_mut()
                    .append("sec-websocket-key", HeaderValue::from_str(k).unwrap());
            }
            check(&r).map(|_| ()).map_err(|e| e.code())
        };
        assert_eq!(with_key(&[KEY]), Ok(()));
        assert_eq!(with_key(&["AAAAAAAAAAAAAAAAAAAA+/=="]), Ok(()));
        for bad in [
            "short",
            // 24 bytes, but not base64 of 16 bytes.
            "dGhlIHNhbXBsZSBub25jZQ!=",
            "dGhlIHNhbXBsZSBub25jZQ=A",
            "dGhlIHNhbXBsZSBub25jZ===",
            "dGhlIHNhbXBsZSBub25j ZQ==",
            "dGhlIHNhbXBsZSBub25jZQ==x",
        ] {
            assert_eq!(with_key(&[bad]), Err("bad_websocket_key"), "{bad}");
        }
        assert_eq!(with_key(&[KEY, KEY]), Err("bad_websocket_key"));
    }

    #[test]
    fn the_answer_carries_what_the_rfcs_ask_for() {
        let header = |r: Refusal, name: &str| {
            r.response()
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            header(Refusal::BadWebSocketVersion, "sec-websocket-version").as_deref(),
            Some("13")
        );
        assert_eq!(
            header(Refusal::MethodNotAllowed, "allow").as_deref(),
            Some("GET")
        );
        assert_eq!(
            header(Refusal::UpgradeRequired, "upgrade").as_deref(),
            Some("websocket")
        );
        assert_eq!(
            header(Refusal::UpgradeRequired, "connection").as_deref(),
            Some("Upgrade, close")
        );
        assert_eq!(
            header(Refusal::BadWebSocketKey, "connection").as_deref(),
            Some("close")
        );
        assert_eq!(
            header(Refusal::BadWebSocketKey, "sec-websocket-version"),
            None
        );
        let resp = Refusal::InvalidClientId("why").response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()["content-type"], "application/json");
    }

    #[test]
    fn unreadable_heads_map_to_the_table() {
        assert_eq!(Refusal::of_head(HeadError::Closed), None);
        let too_large = Refusal::of_head(HeadError::TooLarge).unwrap();
        assert_eq!(
            (too_large.status().as_u16(), too_large.code()),
            (431, "headers_too_large")
        );
        let bad = Refusal::of_head(HeadError::Invalid("malformed request head")).unwrap();
        assert_eq!((bad.status().as_u16(), bad.code()), (400, "bad_request"));
        assert_eq!(bad.to_string(), "malformed request head");
    }

    mod fuzz {
        use super::super::*;
        use crate::http1::request::{parse_request, HeadLimits};
        use proptest::prelude::*;

        /// A header: one of the names the check reads (or another), with a value that would
        /// pass, a near miss, or any bytes at all.
        fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
            let name = prop_oneof![
                Just("Upgrade".to_owned()),
                Just("Connection".to_owned()),
                Just("Sec-WebSocket-Version".to_owned()),
                Just("Sec-WebSocket-Key".to_owned()),
                "[A-Za-z-]{1,12}",
            ];
            let value = prop_oneof![
                Just(b"websocket".to_vec()),
                Just(b"Upgrade".to_vec()),
                Just(b"13".to_vec()),
                Just(b"dGhlIHNhbXBsZSBub25jZQ==".to_vec()),
                "[ -~]{0,30}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..30),
            ];
            (name, value)
        }

        fn target() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("/ws".to_owned()),
                "/ws\\?[!-~&&[^#]]{0,30}",
                "/ws\\?client_id=[%0-9A-Za-z_.:@-]{0,70}",
            ]
        }

        fn method() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                Just("GET"),
                Just("GET"),
                Just("HEAD"),
                Just("POST"),
                Just("get")
            ]
        }

        /// The check's answer must not panic, a refusal's answer neither, and an accepted
        /// request has a key and, if any, a valid client id.
        fn judge(req: &Request<()>) -> Result<(), TestCaseError> {
            match check(req) {
                Ok(ok) => {
                    prop_assert_eq!(ok.accept_key.len(), 28);
                    if let Some(id) = ok.client_id {
                        prop_assert!(validate_client_id(&id).is_ok());
                    }
                }
                Err(refusal) => prop_assert_eq!(refusal.response().status(), refusal.status()),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any header bytes the `http` types can hold.
            #[test]
            fn no_header_bytes_make_it_panic(
                method in method(),
                target in target(),
                http10 in any::<bool>(),
                headers in proptest::collection::vec(header(), 0..12),
            ) {
                let mut req = Request::new(());
                *req.method_mut() = Method::from_bytes(method.as_bytes()).unwrap();
                let Ok(uri) = target.parse() else {
                    // Not a request target (the head parser refuses it first).
                    return Ok(());
                };
                *req.uri_mut() = uri;
                *req.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
                for (name, value) in headers {
                    if let (Ok(n), Ok(v)) = (
                        header::HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_bytes(&value),
                    ) {
                        req.headers_mut().append(n, v);
                    }
                }
                judge(&req)?;
            }

            /// Whole heads as a client sends them, read by the one request-head parser.
            #[test]
            fn no_request_head_makes_it_panic(
                method in method(),
                target in target(),
                headers in proptest::collection::vec(header(), 0..12),
            ) {
                let mut head = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
                for (name, value) in headers {
                    head.extend_from_slice(name.as_bytes());
                    head.extend_from_slice(b": ");
                    head.extend_from_slice(&value);
                    head.extend_from_slice(b"\r\n");
                }
                head.extend_from_slice(b"\r\n");
                if let Ok(Some((req, _))) = parse_request(&head, HeadLimits::NODE) {
                    judge(&req)?;
                }
            }
        }
    }
}
